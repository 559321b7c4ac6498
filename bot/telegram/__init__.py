"""Telegram through Telethon: the transport, the flood governor that paces it, and the service that runs both.

Only this package imports Telethon. `transport` translates Telethon's updates and errors into the
project's types (a FloodWait becomes `RateLimited`); `flood_governor` paces every call per chat
and pauses a chat Telegram told to wait (`shared_flood`: the same pause for every instance, through
Redis); `service` connects, catches up and runs the bot under systemd.
"""
