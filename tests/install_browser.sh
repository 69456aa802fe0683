#!/bin/sh
# Chromium and ChromeDriver from Debian's packages, for the browser test of `gcd-jax app` (tests/test_app.py).
# Without root or apt the test is skipped (it prints why); nothing is downloaded by pip or by Selenium.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: needs root and apt-get (Debian/Ubuntu); the browser test will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 ||
  { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; } ||
  echo "install_browser.sh: apt-get could not install chromium chromium-driver; the browser test will be skipped" >&2
exit 0
