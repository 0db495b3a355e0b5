"""Consumer groups: the coordinator (membership, assignment, offset commits) and the assignors.

Both are plain objects: the coordinator takes its clock and its view of the controller as
arguments (see coordinator.GroupBackend), so tests drive it without a broker or an event loop.
"""
