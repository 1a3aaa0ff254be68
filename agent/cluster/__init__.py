"""Cluster membership, gossip and replication (not yet wired into the agent)."""
