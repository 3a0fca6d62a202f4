"""The cluster layer: from a ClusterSnapshot to the core instance, and back to node plans.

* allocator.cluster.snapshot — the ClusterSnapshot the layer divides (GPUs, tenants, models);
* allocator.cluster.documents — that snapshot parsed from ``gpufair allocate``'s file;
* allocator.cluster.instance — the snapshot as a core instance: candidate seats, values, side
  constraints;
* allocator.cluster.idle_pools — stream pools the core left idle, shared where fairness allows;
* allocator.cluster.allocate — ``allocate_cluster`` (snapshot to certified node plans) and its
  checker ``validate_cluster_allocation``;
* allocator.cluster.plan — the node plan format (the one module the executor uses).

Nothing is imported here, so that reading plans does not load the solvers.
"""
