"""The control plane: coordinator, agent, client, the embedded local cluster, discovery, keys and
authentication (`security`), Prometheus metrics and the Prometheus launcher."""
