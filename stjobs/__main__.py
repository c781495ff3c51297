from stjobs.cli import run

run()
