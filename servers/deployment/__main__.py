"""`python -m servers.deployment`: run the deployment server alone."""

from servers.mesh.entrypoint import main

main("deployment")
