"""A Chaos Toolkit extension for the ShieldX mesh: actions that run, start and abort chaos
experiments or inject a fault directly, and probes that read the steady state.

Use it from an experiment file with `"type": "python", "module": "clients.chaostoolkit.actions"`
(or `.probes`). Every function reaches the mesh through the typed clients; the deployment
server's address comes from the `shieldx_deployment` configuration key, else from the endpoints
`shieldx up` wrote under `shieldx_data_dir` (default `.shieldx`), with its credentials when present.
"""
