"""The real-data page: public real scans converted to the project format and shown."""
