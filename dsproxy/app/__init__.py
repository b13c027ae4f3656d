"""Process level: the event loop runner, one worker's lifecycle, the supervisor."""
