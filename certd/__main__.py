from certd.cli import main

raise SystemExit(main())
