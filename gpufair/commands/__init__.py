"""One module per ``gpufair`` subcommand, each exposing ``main(argv: list[str]) -> int``."""
