"""`gcd-jax app`: the request checks (in process) and the page driven in a real browser.

Browser test: `gcd-jax app` (the packaged demo model) runs in a subprocess on a free local port; headless
Chromium (Debian's chromium + chromium-driver, through Selenium) loads the page, is refused a file that is not
a video (message in the page), uploads a procedural clip the test renders, sets 8 sampler steps and moves the
Δelevation slider with the keyboard, presses Generate, waits for the result video, moves the slider to the
other side, generates again, and checks that the generated frames differ between the two camera moves. Two
requests sent at once through Gradio's client both complete (queued, not dropped), and the server refuses files
outside its output folder.
A screenshot of the page after generation goes to $GCD_JAX_APP_SCREENSHOT when set (docs/images/app.png).

The browser test is skipped only when Chromium or ChromeDriver is not installed (`.ci/run` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.fixtures_train import REPO

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
CHROMEDRIVER = shutil.which('chromedriver') or '/usr/bin/chromedriver'
STEPS = 8  # sampler steps of the browser tests' requests (the page's default is 25)


def _clip(path: str, scene: int = 293, frames: int = 12) -> str:
  """A held-out procedural scene (view 0) as an mp4, as a user's upload."""
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  from gcd_jax.geometry import procedural  # pylint: disable=g-import-not-at-top
  s = procedural.generate_scene(scene, procedural.scene_config('tiny', num_frames=frames))
  return media.write_mp4(path, np.stack([s.render(0, f)[0] for f in range(frames)]), 24)


# ------------------------------------------------------------------------------------- request checks
@pytest.fixture(scope='module')
def generator(tmp_path_factory):
  from gcd_jax import app  # pylint: disable=g-import-not-at-top
  from gcd_jax.pipeline import GCDPipeline  # pylint: disable=g-import-not-at-top
  return app.Generator(GCDPipeline.from_pretrained('demo', progress=False), str(tmp_path_factory.mktemp('app')),
                       app.AppSettings(max_upload_mb=0.05))


def test_bad_requests_are_refused_before_sampling(generator, tmp_path):
  from gcd_jax import app  # pylint: disable=g-import-not-at-top
  call = lambda path, **kw: generator(path, 30, 10, 0, 'gradual', kw.get('n', 1), 0)  # noqa: E731
  with pytest.raises(app.AppError, match='no input video'):
    call(None)
  text = tmp_path / 'notes.mp4'
  text.write_text('not a video')
  with pytest.raises(app.AppError, match='notes.mp4 is not a readable video'):
    call(str(text))
  short = _clip(str(tmp_path / 'short.mp4'), frames=4)  # 6 frames at stride 2 need 11
  with pytest.raises(app.AppError, match='frame'):
    call(short)
  big = tmp_path / 'big.mp4'
  big.write_bytes(b'\0' * 100_000)  # over the 0.05 MB cap of this generator
  with pytest.raises(app.AppError, match='more than this page accepts'):
    call(str(big))
  with pytest.raises(app.AppError, match='choose 1 to 4'):
    call(_clip(str(tmp_path / 'ok.mp4')), n=9)
  assert not os.path.exists(os.path.join(generator.out_dir, 'requests'))  # nothing sampled, nothing written


def test_camera_limits_are_the_trained_range(generator):
  assert generator.camera_limits() == dict(azimuth=(-90.0, 90.0), elevation=(-30.0, 30.0), radius=(-3.0, 3.0))


# ---------------------------------------------------------------------------------------------- browser
@pytest.fixture(scope='module')
def server(tmp_path_factory):
  import portpicker  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('app_server')
  port = portpicker.pick_unused_port()
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  log = open(out / 'server.log', 'w')
  proc = subprocess.Popen([sys.executable, '-m', 'gcd_jax.cli', 'app', '--port', str(port), '--out',
                           str(out / 'out')], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(out))
  url = f'http://127.0.0.1:{port}/'
  try:
    deadline = time.time() + 300
    while time.time() < deadline:
      if proc.poll() is not None:
        raise AssertionError(f'gcd-jax app exited {proc.returncode}: {(out / "server.log").read_text()[-3000:]}')
      try:
        urllib.request.urlopen(url, timeout=5).read()
        break
      except (urllib.error.URLError, ConnectionError, TimeoutError):
        time.sleep(0.5)
    else:
      raise AssertionError('gcd-jax app did not start within 300 s')
    yield dict(url=url, out=str(out / 'out'), log=out / 'server.log')
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
    log.close()


@pytest.fixture(scope='module')
def browser():
  if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f'no Chromium/ChromeDriver at {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver')
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
            '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
            '--window-size=1400,1250'):
    options.add_argument(a)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  driver.set_page_load_timeout(60)
  yield driver
  driver.quit()


def _wait(pred, timeout: float, what: str, server=None):
  t0 = time.time()
  while time.time() - t0 < timeout:
    got = pred()
    if got:
      return got
    time.sleep(0.3)
  log = server['log'].read_text()[-2000:] if server else ''
  raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}; server log: {log}')


def _result_src(driver) -> str:
  from selenium.common.exceptions import StaleElementReferenceException  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  videos = driver.find_elements(By.CSS_SELECTOR, '#result video')
  try:
    return (videos[0].get_attribute('src') or '') if videos else ''
  except StaleElementReferenceException:  # Gradio replaced the element between the two calls: poll again
    return ''


def _set_slider(driver, name: str, value: int):
  """Moves a slider as a user does with the keyboard: Home (its minimum), then → one step a press."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.keys import Keys  # pylint: disable=g-import-not-at-top
  knob = driver.find_element(By.CSS_SELECTOR, f'#{name} input[type=range]')
  knob.send_keys(Keys.HOME)
  knob.send_keys(Keys.ARROW_RIGHT * int(value - float(knob.get_attribute('min'))))
  box = driver.find_element(By.CSS_SELECTOR, f'#{name} input[type=number]')
  _wait(lambda: box.get_attribute('value') == str(value), 10, f'the {name} slider to show {value}')


def _generate(driver, server, previous: str) -> str:
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  driver.find_element(By.ID, 'generate').click()
  return _wait(lambda: (lambda s: s if s and s != previous else '')(_result_src(driver)), 600,
               'the generated video', server)


def _frames(url: str, tmp_path, name: str) -> np.ndarray:
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  path = tmp_path / name
  path.write_bytes(urllib.request.urlopen(url, timeout=30).read())
  return np.stack([np.asarray(f, np.float32) for f in imageio.get_reader(str(path))])


def _page_text(driver) -> str:
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  return driver.find_element(By.TAG_NAME, 'body').text


def test_page_generates_and_follows_the_camera(server, browser, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  d = browser
  d.get(server['url'])
  upload = _wait(lambda: d.find_elements(By.CSS_SELECTOR, '#input_video input[type=file]'), 60, 'the upload field')
  assert 'trained camera range' in _page_text(d)

  # A file that is not a video: the page says so, nothing is generated.
  bad = tmp_path / 'notes.mp4'
  bad.write_text('not a video')
  upload[0].send_keys(str(bad))
  d.find_element(By.ID, 'generate').click()
  _wait(lambda: 'notes.mp4 is not a readable video' in _page_text(d), 60, 'the error message', server)
  assert not _result_src(d)

  d.get(server['url'])  # fresh page: upload the real clip
  upload = _wait(lambda: d.find_elements(By.CSS_SELECTOR, '#input_video input[type=file]'), 60, 'the upload field')
  upload[0].send_keys(_clip(str(tmp_path / 'clip.mp4')))
  _wait(lambda: d.find_elements(By.CSS_SELECTOR, '#input_video video'), 60, 'the uploaded video', server)

  # Fewer sampler steps (the 'advanced' section): the queue test below asks for the same, so the server
  # compiles one sampling program for both tests.
  d.find_element(By.XPATH, "//button[.//*[normalize-space(text())='advanced'] or normalize-space(text())='advanced']"
                 ).click()
  _set_slider(d, 'steps', STEPS)
  # The camera moves down, then up (Δazimuth stays at the page's 60°). Elevation, not the azimuth's sign: the
  # demo model draws +Δaz and −Δaz alike (docs/demo_model.md, "What the demo model has not learned").
  _set_slider(d, 'elevation', -25)
  low = _generate(d, server, '')
  assert 'Δelevation -25°' in _page_text(d)
  assert d.find_elements(By.CSS_SELECTOR, '#camera img')  # the trajectory picture
  _set_slider(d, 'elevation', 25)
  high = _generate(d, server, low)
  assert 'Δelevation +25°' in _page_text(d)
  shot = os.environ.get('GCD_JAX_APP_SCREENSHOT')
  d.save_screenshot(shot or str(tmp_path / 'app.png'))

  a, b = _frames(low, tmp_path, 'low.mp4'), _frames(high, tmp_path, 'high.mp4')
  assert a.shape == b.shape and a.shape[0] == 6, a.shape
  w = a.shape[2] // 3  # input | generated 1 | generated 2 (the page's default: 2 samples)
  np.testing.assert_allclose(a[:, :, :w], b[:, :, :w], atol=12)  # same input panel (codec noise only)
  moved = np.abs(a[1:, :, w:] - b[1:, :, w:]).mean()  # frames after 0, where the gradual camera has moved
  assert moved > 8.0, moved


def test_requests_are_queued_and_files_are_private(server, browser):
  del browser  # ordered after the page test (compiled sampler)
  from gradio_client import Client, handle_file  # pylint: disable=g-import-not-at-top
  client = Client(server['url'], verbose=False)
  clip = os.path.join(server['out'], 'examples', sorted(os.listdir(os.path.join(server['out'], 'examples')))[0])
  # The page test's settings (2 samples, frame stride 2, STEPS steps): its compiled sampler serves these too.
  jobs = [client.submit(handle_file(clip), az, 0, 0, 'direct', 2, 0, 2, STEPS, api_name='/run') for az in (-45, 45)]
  outs = [j.result(timeout=600) for j in jobs]
  assert all(o[2].startswith('camera move') for o in outs), outs
  assert server['log'].read_text().count('compiling the sampler') == 1  # one program for all four requests
  for path in ('/etc/passwd', os.path.join(REPO, 'README.md')):
    with pytest.raises(urllib.error.HTTPError):
      urllib.request.urlopen(server['url'] + 'gradio_api/file=' + path, timeout=10)
