"""The REST API: aiohttp routes, bearer-token auth, problem documents."""
