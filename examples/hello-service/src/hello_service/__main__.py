"""``python -m hello_service``: serve on 127.0.0.1:$PORT until SIGTERM."""

from hello_service.server import main

if __name__ == "__main__":
    raise SystemExit(main())
