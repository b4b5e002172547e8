"""Models leaving the server: a static web bundle (web.py) and a mobile ORT file (mobile.py)."""
