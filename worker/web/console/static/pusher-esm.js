// clients/js imports "pusher-js"; the page's import map points that name here. The web build
// (vendored from npm, loaded by a classic <script> before any module) defines window.Pusher.
export default globalThis.Pusher;
