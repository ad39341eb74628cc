// Runs before the first paint (a classic script in <head>): puts the theme on
// <html data-theme> so the page never flashes the wrong colours. The choice
// made with the toggle is kept in localStorage; without one the system's
// prefers-color-scheme decides, and keeps deciding when it changes.
(function () {
  var KEY = 'fastworker.theme';
  var stored = null;
  try { stored = localStorage.getItem(KEY); } catch (e) { /* storage off */ }
  var mq = window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;
  var theme = stored === 'light' || stored === 'dark' ? stored : (mq && mq.matches ? 'dark' : 'light');
  document.documentElement.setAttribute('data-theme', theme);
})();
