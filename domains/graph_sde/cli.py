"""CLI and tour section of graph_sde (filled in as the domain lands)."""
