"""The application layer between the front ends and the engine: one job queue, the services, the jam.

Which thread runs what and which lock guards what, across the daemon: ``docs/threads.md``.
"""
