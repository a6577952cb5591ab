"""`python -m servers.tokens`: run the tokens server alone."""

from servers.mesh.entrypoint import main

main("tokens")
