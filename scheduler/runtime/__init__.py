"""Runtime: turns a Plan into running replicas and keeps it that way.

Only ``ray_backend`` imports ray; the reconciler takes its side effects through the
``ReplicaLauncher`` protocol, so its logic is tested with a small fake.
"""
