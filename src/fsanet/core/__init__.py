"""The few modules every part uses: errors, files, progress bars, the CPU."""
