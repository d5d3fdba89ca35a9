"""The bottom room: what every other room (server, adapters, train, eval, ui, deploy) may use and
what imports none of them. Files written whole or not at all, the service's folders, a free port.

train and eval share these instead of importing each other (the developers' guide: rooms with
one-way doors); a module here imports only the standard library and third-party packages.
"""
