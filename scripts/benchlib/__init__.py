"""meshlet's benchmarks, run by ``scripts/bench`` (``python -m scripts.benchlib.main``).

One module per benchmark (``density``, ``serve``, ``coldstart``, ``registry``,
``cache``),
the load generator that ``serve`` runs in a process of its own (``loadgen``),
and what they share: the agent under test (``agents``), KServe/ModelMesh client
calls (``client``) and reporting (``report``).

Never import ``mlserver`` here: its generated protos and tritonclient's clash in
protobuf's default pool, and the benchmarks use tritonclient.
"""
