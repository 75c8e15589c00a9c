"""The tray app: the companion's face on the desktop (status at a glance, approvals, notifications).

model.py is pure (status and events in, icon state and menu out), controller.py talks to the daemon's
control API, shell.py is the thin pystray layer; `llmtune-companion tray` runs them (app.py).
"""
