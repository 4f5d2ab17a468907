from promptcl.cli import app

app()
