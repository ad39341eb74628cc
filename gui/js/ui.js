// Toasts (aria-live), the confirm dialog, copying to the clipboard.
import { h } from './dom.js';

/**
 * toast('Task cancelled') / toast(error.message, 'error') / toast(node, 'ok')
 * Errors stay 8 s and are announced assertively; others 4 s.
 */
export function toast(message, kind = 'info', ms) {
  const box = document.getElementById('toasts');
  if (!box) return;
  const close = h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss' }, '×');
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status', 'data-testid': `toast-${kind}` },
    h('div', { class: 'toast-body' }, message), close);
  const remove = () => el.remove();
  close.addEventListener('click', remove);
  box.appendChild(el);
  while (box.children.length > 5) box.firstElementChild.remove();
  setTimeout(remove, ms ?? (kind === 'error' ? 8000 : 4000));
}

/** Shows the error of a failed action. */
export function toastError(err, what) {
  const msg = err && err.message ? err.message : String(err);
  toast(what ? `${what}: ${msg}` : msg, 'error');
}

/** Resolves true when the user confirms. Esc or "Keep" resolves false. */
export function confirmDialog(title, text, okLabel = 'OK', danger = true) {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  const yes = document.getElementById('confirm-yes');
  yes.textContent = okLabel;
  yes.className = danger ? 'btn danger' : 'btn primary';
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.showModal();
    yes.focus();
  });
}

/** navigator.clipboard where allowed (secure contexts), else a hidden textarea + execCommand. */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch { /* fall back below */ }
  const ta = h('textarea', { class: 'offscreen', readonly: true, 'aria-hidden': 'true' });
  ta.value = text;
  document.body.appendChild(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand('copy'); } catch { ok = false; }
  ta.remove();
  return ok;
}
