export interface PhaseStopwatch<P extends string> {
  /** the phase running now, for an error that says where it failed */
  readonly phase: P;
  /** ends the running phase and starts `next` (without it, only ends it): what ended, and its wall time */
  next(next?: P): { name: P; ms: number };
}

/** Times a job's phases one after another, each from the end of the one before: bake, rollout, install, push. */
export function phaseStopwatch<P extends string = string>(first: NoInfer<P>, now: () => number = Date.now): PhaseStopwatch<P> {
  let phase = first;
  let started = now();
  return {
    get phase() {
      return phase;
    },
    next(next) {
      const at = now();
      const ended = { name: phase, ms: at - started };
      phase = next ?? phase;
      started = at;
      return ended;
    },
  };
}
