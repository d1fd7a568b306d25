"""One module per `riskflow` command group; each exposes `register(subparsers, common)`."""
