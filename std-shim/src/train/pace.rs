//! [`Pace`]: whether a block of training steps splits its work across the
//! pool or stays on one thread (`fixnn train` without `--threads`).

use crate::rayon_backend::RayonBackend;

/// Training steps per block: the unit [`Pace`] chooses a mode for.
const PACE_BLOCK: usize = 32;

/// Training steps per block of the first three of a mode's run: a try of
/// the pool on busy cores costs that much less (its steps can take ten
/// times as long as on one thread).
const PACE_SHORT: usize = 8;

/// Most blocks between two tries of the mode not in use.
const PACE_PROBE: u64 = 32;

/// Blocks on one thread before the first try of the pool again (doubled
/// after each try that finds one thread still faster, up to
/// [`PACE_RETRY_MAX`]): a try of the pool on busy cores costs about three
/// blocks on one thread.
const PACE_RETRY: u64 = 4;

/// Most blocks on one thread between two tries of the pool.
const PACE_RETRY_MAX: u64 = 128;

/// A mode replaces the other only when it took less than this fraction
/// of the other's time per step (block times vary by a few percent).
const PACE_MARGIN: f64 = 0.85;

/// Where a block of training steps runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Operations split across the pool, its other threads polling for
    /// work ([`RayonBackend::install_hot`]).
    Pool,
    /// Every operation on the training thread
    /// ([`serial`](crate::rayon_backend::serial)).
    One,
}

impl Mode {
    fn other(self) -> Mode {
        match self {
            Mode::Pool => Mode::One,
            Mode::One => Mode::Pool,
        }
    }

    /// Runs `f` in this mode.
    pub(super) fn run<R: Send>(self, bk: &RayonBackend, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Mode::Pool => bk.install_hot(f),
            Mode::One => crate::rayon_backend::serial(f),
        }
    }
}

/// Chooses, block by block, whether training steps split their work across
/// the pool or stay on one thread. Both give the same bits. On an idle
/// machine the pool is faster; when other programs keep the cores busy, a
/// step that waits for a descheduled pool thread is several times slower
/// than one thread alone (measured: 0.79-0.98 s for an MNIST MLP epoch on
/// two threads beside one busy process, 0.27 s on one).
///
/// Each mode's time per step is the median of its last three blocks in a
/// row (one slow block, a page fault or another program's burst, does not
/// count), or the slower of its first two (a try of the pool that was
/// lucky on busy cores is not believed for long); a mode's blocks before
/// it last ran the other mode do not count, as the load may have changed.
/// The pace switches from the pool to one thread when one thread took
/// less than [`PACE_MARGIN`] of the pool's time per step, and back when
/// the pool took less than that fraction of one thread's (a try of the
/// pool that only ties on busy cores is not taken). It tries the other
/// mode for one block:
/// while on the pool, at the third block and then every [`PACE_PROBE`]
/// blocks; while on one thread, after [`PACE_RETRY`] blocks, then twice as
/// many each time, up to [`PACE_RETRY_MAX`].
#[derive(Debug)]
pub(super) struct Pace {
    /// Choose; otherwise always [`Mode::Pool`] (an explicit `--threads`,
    /// or a pool of one thread).
    adaptive: bool,
    /// Blocks recorded.
    blocks: u64,
    /// The mode of the last block.
    last: Mode,
    /// The mode chosen after the last block (kept while neither mode is
    /// clearly faster).
    chosen: Mode,
    /// Per mode, seconds per step of its last run of blocks (up to three,
    /// the latest at `runs[m] - 1` modulo 3) and how many.
    times: [[f64; 3]; 2],
    runs: [usize; 2],
    /// The block that tries the other mode.
    probe: u64,
    /// Blocks from a try of the pool to the next, while on one thread.
    retry: u64,
    /// Blocks of this epoch on the pool and on one thread.
    epoch: [u64; 2],
}

impl Pace {
    pub(super) fn new(adaptive: bool) -> Self {
        Pace {
            adaptive,
            blocks: 0,
            last: Mode::Pool,
            chosen: Mode::Pool,
            times: [[0.0; 3]; 2],
            runs: [0; 2],
            probe: 2,
            retry: PACE_RETRY,
            epoch: [0; 2],
        }
    }

    /// Seconds per step of `mode` from its last run of blocks: the
    /// median of the latest three, the slower of two, the one.
    fn estimate(&self, mode: Mode) -> Option<f64> {
        let n = self.runs[mode as usize].min(3);
        let mut t = self.times[mode as usize];
        let t = &mut t[..n];
        t.sort_by(f64::total_cmp);
        t.get(n / 2).copied()
    }

    /// The faster mode: the pool until one thread has been measured
    /// clearly faster, then one thread until the pool has been measured
    /// clearly faster.
    pub(super) fn best(&self) -> Mode {
        match (self.estimate(Mode::Pool), self.estimate(Mode::One)) {
            (Some(pool), Some(one)) if self.adaptive => {
                if one < PACE_MARGIN * pool {
                    Mode::One
                } else if pool < PACE_MARGIN * one {
                    Mode::Pool
                } else {
                    self.chosen
                }
            }
            _ => Mode::Pool,
        }
    }

    /// Steps of the next block, in `mode`: [`PACE_SHORT`] for the first
    /// three blocks of a run of `mode` (when the pace chooses), else
    /// [`PACE_BLOCK`].
    pub(super) fn steps(&self, mode: Mode) -> usize {
        let run = if mode == self.last {
            self.runs[mode as usize]
        } else {
            0
        };
        if self.adaptive && run < 3 {
            PACE_SHORT
        } else {
            PACE_BLOCK
        }
    }

    /// The mode of the next block.
    pub(super) fn next(&self) -> Mode {
        if self.adaptive && self.blocks == self.probe {
            self.best().other()
        } else {
            self.best()
        }
    }

    /// A block in `mode` took `seconds` per step.
    pub(super) fn record(&mut self, mode: Mode, seconds: f64) {
        let before = self.best();
        let m = mode as usize;
        if mode != self.last {
            // A new run of this mode: its earlier blocks are out of date.
            self.runs[m] = 0;
        }
        self.times[m][self.runs[m] % 3] = seconds;
        self.runs[m] += 1;
        let after = self.best();
        self.chosen = after;
        if self.blocks == self.probe || after != before {
            self.probe = self.blocks
                + match after {
                    Mode::Pool => {
                        self.retry = PACE_RETRY;
                        PACE_PROBE
                    }
                    Mode::One => {
                        if before == Mode::Pool {
                            self.retry = PACE_RETRY;
                        }
                        let wait = self.retry;
                        self.retry = (2 * self.retry).min(PACE_RETRY_MAX);
                        wait
                    }
                };
        }
        self.last = mode;
        self.blocks += 1;
        self.epoch[m] += 1;
    }

    /// Start counting the blocks of another epoch.
    pub(super) fn new_epoch(&mut self) {
        self.epoch = [0; 2];
    }

    /// For the end of an epoch's line: how many of its blocks ran on one
    /// thread (nothing when the pace does not choose).
    pub(super) fn summary(&self) -> String {
        if !self.adaptive {
            return String::new();
        }
        let [pool, one] = self.epoch;
        format!(", {one} of {} blocks on one thread", pool + one)
    }
}

#[cfg(test)]
mod tests {
    use super::{Mode, Pace, PACE_BLOCK, PACE_PROBE, PACE_SHORT};

    /// The modes of `blocks` blocks, each taking `pool` or `one` seconds
    /// per step as the block index says.
    fn modes(
        pace: &mut Pace,
        blocks: u64,
        pool: impl Fn(u64) -> f64,
        one: impl Fn(u64) -> f64,
    ) -> Vec<Mode> {
        (0..blocks)
            .map(|b| {
                let m = pace.next();
                pace.record(m, if m == Mode::Pool { pool(b) } else { one(b) });
                m
            })
            .collect()
    }

    /// The blocks of `m` not in mode `want`.
    fn except(m: &[Mode], want: Mode) -> Vec<u64> {
        (0..m.len() as u64)
            .filter(|&b| m[b as usize] != want)
            .collect()
    }

    #[test]
    fn the_pace_runs_the_faster_mode_and_tries_the_other_now_and_then() {
        let n = 4 * PACE_PROBE;
        let p = PACE_PROBE;
        // An idle machine: the pool, one thread only at the tries.
        let m = modes(&mut Pace::new(true), n, |_| 2e-4, |_| 2.7e-4);
        assert_eq!(except(&m, Mode::Pool), [2, p + 2, 2 * p + 2, 3 * p + 2]);
        // A slow block of the pool (another program's burst) just before a
        // try does not send the pace to one thread.
        let m = modes(
            &mut Pace::new(true),
            n,
            |b| if b == p + 1 { 9e-4 } else { 2e-4 },
            |_| 2.7e-4,
        );
        assert_eq!(except(&m, Mode::Pool), [2, p + 2, 2 * p + 2, 3 * p + 2]);
        // Busy cores: one thread from the first try on; the pool tried
        // again after 4, 8, 16, 32, 64 blocks.
        let m = modes(&mut Pace::new(true), n, |_| 9e-4, |_| 2.7e-4);
        assert_eq!(except(&m, Mode::One), [0, 1, 6, 14, 30, 62, 126]);
        // A lucky try of the pool on busy cores: back to one thread after
        // one more block, the next try 4 blocks later.
        let m = modes(
            &mut Pace::new(true),
            32,
            |b| if b == 6 { 2e-4 } else { 9e-4 },
            |_| 2.7e-4,
        );
        assert_eq!(except(&m, Mode::One), [0, 1, 6, 7, 11, 19]);
        // A try of the pool that only ties with one thread is not taken.
        let m = modes(
            &mut Pace::new(true),
            32,
            |b| if b == 6 { 2.6e-4 } else { 9e-4 },
            |_| 2.7e-4,
        );
        assert_eq!(except(&m, Mode::One), [0, 1, 6, 14, 30]);
        // Cores that become free: back to the pool at its next try.
        let m = modes(
            &mut Pace::new(true),
            n,
            |b| if b < 60 { 9e-4 } else { 2e-4 },
            |_| 2.7e-4,
        );
        assert_eq!(except(&m[..63], Mode::One), [0, 1, 6, 14, 30, 62]);
        assert_eq!(except(&m[63..], Mode::Pool), [94 - 63, 126 - 63]);
        // Cores that become busy: one thread once two of the pool's last
        // three blocks are slow.
        let m = modes(
            &mut Pace::new(true),
            n,
            |b| if b < 10 { 2e-4 } else { 9e-4 },
            |_| 2.7e-4,
        );
        assert_eq!(except(&m[..12], Mode::Pool), [2]);
        assert_eq!(m[12], Mode::One);
        // An explicit --threads: always the pool, in whole blocks.
        let mut pace = Pace::new(false);
        let m = modes(&mut pace, n, |_| 9e-4, |_| 2.7e-4);
        assert!(m.iter().all(|&m| m == Mode::Pool));
        assert_eq!(pace.steps(Mode::Pool), PACE_BLOCK);
    }

    #[test]
    fn the_first_three_blocks_of_a_run_are_short() {
        let mut pace = Pace::new(true);
        let mut steps = Vec::new();
        for _ in 0..8 {
            let m = pace.next();
            steps.push((m, pace.steps(m)));
            pace.record(m, if m == Mode::Pool { 2e-4 } else { 2.7e-4 });
        }
        let (pool, one) = (Mode::Pool, Mode::One);
        let (short, long) = (PACE_SHORT, PACE_BLOCK);
        assert_eq!(
            steps,
            [
                (pool, short),
                (pool, short),
                (one, short),
                (pool, short),
                (pool, short),
                (pool, short),
                (pool, long),
                (pool, long)
            ]
        );
    }
}
