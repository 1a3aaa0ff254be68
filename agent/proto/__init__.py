"""Generated protobuf/gRPC modules (by scripts/gen-protos; do not edit them).

Our messages live in a private descriptor pool, ``POOL``, not protobuf's
default one: tritonclient and MLServer register their own ``inference.*``
messages in the default pool, and two files declaring the same symbol cannot
share a pool. The wire format is unaffected. Server reflection is given POOL.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
