from xenopus.toolstack.cli import run

run()
