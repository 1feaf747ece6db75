"""Operations center: HTTP API, live feed and the one-screen dashboard."""
