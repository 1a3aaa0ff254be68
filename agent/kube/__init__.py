"""Kubernetes: resources in, registry entries out, status back.

Every agent watches meshlet's ``Model`` resources (and, with
``modelmesh_compat``, ModelMesh-serving's ``Predictor`` and
``InferenceService``) and serves each as ModelMesh-serving did: a vmodel named
after the resource, pointing at a concrete model whose id is derived from the
spec, so a changed spec is a rolling update (the vmodel moves once the new
model has loaded; the old one is unregistered).

The parts, one idea each:

- ``config``: when Kubernetes is on, and the API client (in-cluster or a
  kubeconfig); imports the ``kubernetes`` package only when asked to.
- ``api``: the few blocking API calls meshlet makes (list a page, watch, get,
  patch status) with errors turned into ``ApiError`` / ``ApiUnreachable``.
- ``kinds``: the resource kinds (group, version, plural, translation, status shape).
- ``translate``: one pure function per kind, object in, ``Entry`` or ``Invalid`` out.
- ``watcher``: the one watcher class (client-go's informer contract: list,
  watch from the list's resourceVersion with bookmarks, re-list on 410,
  resume with backoff), a thread per kind and namespace feeding the loop.
- ``index``: the little kept per resource (no objects), and name conflicts.
- ``ownership``: which live member acts for a resource (rendezvous hash).
- ``sync``: the idempotent event handlers that drive vmodels and the registry.
- ``status``: what a resource's status says (pure), in each kind's shape.
- ``status_writer``: the one status writer (owner only, coalesced, backoff).
- ``service``: builds the parts from the settings; ``start`` / ``stop``.

Nothing below ``agent.kube`` imports it; ``agent.app`` wires it in when
Kubernetes is on.
"""
