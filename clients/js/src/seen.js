// A bounded set of recently seen event ids: the oldest id is forgotten first.

export class SeenSet {
  /** @param {number} capacity how many ids to remember (at least 1) */
  constructor(capacity) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`capacity must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    /** Insertion-ordered, so the first key is the oldest. */
    this.ids = new Set();
  }

  get size() {
    return this.ids.size;
  }

  has(id) {
    return this.ids.has(id);
  }

  /** Remember `id`; true when it was new. A repeat refreshes it (least recently seen goes first). */
  add(id) {
    const fresh = !this.ids.delete(id);
    this.ids.add(id);
    while (this.ids.size > this.capacity) {
      this.ids.delete(this.ids.values().next().value);
    }
    return fresh;
  }
}
