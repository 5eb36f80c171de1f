from sidecar_proxy.cli import main

raise SystemExit(main())
