"""The application layer between the front ends and the engine: one job queue, the services, the jam."""
