// The login page's one script (an open route, like style.css and
// favicon.svg: it is loaded before anyone has signed in). Sets the theme
// before the first paint, as js/theme-boot.js does for the page, and shows
// "wrong token" after a failed attempt (the server sends the browser back
// here with ?failed=1). No inline script under the CSP.
(function () {
  var stored = null;
  try { stored = localStorage.getItem('fastworker.theme'); } catch (e) { /* storage off */ }
  var dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
  document.documentElement.setAttribute('data-theme', stored === 'light' || stored === 'dark' ? stored : (dark ? 'dark' : 'light'));

  function showFailure() {
    if (new URLSearchParams(location.search).get('failed') !== '1') return;
    var el = document.getElementById('login-error');
    if (el) el.hidden = false;
    var input = document.getElementById('token');
    if (input) input.setAttribute('aria-invalid', 'true');
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', showFailure);
  else showFailure();
})();
