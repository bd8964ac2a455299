import os

# Qt renders offscreen in tests: no display on CI or headless machines.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
