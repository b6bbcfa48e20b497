from fsanet.cli import main

raise SystemExit(main())
