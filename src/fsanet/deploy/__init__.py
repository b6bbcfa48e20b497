"""Running engines for others: the HTTP service, Ray scale-out, Triton export."""
