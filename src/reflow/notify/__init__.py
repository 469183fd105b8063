"""Notifications: routing outbox entries to channels, rendering and delivering messages.

``routing`` decides which channels hear of an entry (pure); ``messages`` renders what
they are told; ``channels`` sends (webhook, Slack, e-mail); ``notifier`` is the scheduler's
background thread that does both through the store, never on the tick's thread.
"""
