// The login form. The API decides who gets in: users without one of
// RabbitMQ's management tags (management, policymaker, monitoring,
// administrator) are refused with its "Not management user".

import { login } from './api.js';
import { h } from './dom.js';

export function mount(main, { onLogin }) {
  const user = h('input', { id: 'login-user', name: 'username', autocomplete: 'username', required: true });
  const password = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password' });
  const status = h('div', { id: 'login-status', 'aria-live': 'polite' });
  const button = h('button', { type: 'submit' }, 'Login');
  const form = h('form', { class: 'login' },
    h('h1', {}, 'Log in'),
    h('label', { for: 'login-user' }, 'Username'), user,
    h('label', { for: 'login-password' }, 'Password'), password,
    button, status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    button.disabled = true;
    status.replaceChildren();
    try {
      const me = await login(user.value, password.value);
      await onLogin(me);
    } catch (e) {
      // As RabbitMQ's UI: "Login failed", and why when the API says more.
      status.append(h('p', { class: 'error', role: 'alert' }, 'Login failed'));
      if (e.message && e.message !== 'Login failed') {
        status.append(h('p', { class: 'error', id: 'login-reason' }, e.message));
      }
      button.disabled = false;
    }
  });
  main.append(form);
  user.focus();
  return {};
}
