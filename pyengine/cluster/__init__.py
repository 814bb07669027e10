"""Scale-out on Ray Serve (the ``ray`` extra): replicas of the HTTP server, each with its own
engines, batcher and KV cache, behind one ingress that routes each request to the replica whose
prefix cache most likely holds its prompt's first blocks.

- ``prefix_keys``: a request's routing key, the chained hashes of its prompt's token blocks;
- ``asgi_bridge``: a request run through an in-process ASGI app, its messages streamed out;
- ``router``: the Ray Serve request router that uses the keys (needs Ray);
- ``deploy``: the replica and ingress deployments and ``serve_replicas`` (needs Ray).
"""
