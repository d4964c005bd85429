"""What runs inside a worker: tasks, signal receivers, the wear reporter and control commands.

``workers.app.create_app`` builds the app with all of it; ``workers.runtime`` holds the state
a worker process keeps.
"""
