"""`python -m servers.compliance`: run the compliance server alone."""

from servers.mesh.entrypoint import main

main("compliance")
