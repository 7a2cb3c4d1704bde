from xenopus.toolstack.cli import main

raise SystemExit(main())
