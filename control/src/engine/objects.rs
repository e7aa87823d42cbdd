//! Changes to single objects (`<collection>.put`, `.delete`, `config.patch`): each batch
//! means what [`Engine::apply`] of the whole resulting state means, and shares its steps
//! from compilation on, history and rollback. What differs is cost: the active state is
//! changed in place (and taken back unless a generation comes of it) instead of copied, a
//! change of ports alone is validated by [`revalidate_ports`] against the index of the
//! active view (the whole validation when it cannot tell), the diff looks at the objects
//! a batch touches alone, and the store appends the batch to its journal.

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use super::apply::{log_outcome, Next, Phases, DIFF_BY_TOUCHED_MAX};
use super::{ApplyError, ApplyOptions, ApplyOutcome, Engine};
use crate::diff::diff_of;
use crate::model::DesiredState;
use crate::patch::{
    self, edit, edit_in_place, edit_raw, edit_raw_in_place, undo, Change, Collection, Edits,
    PatchError, RawChange, Undo,
};
use crate::validate::{revalidate_ports, validate, IndexUndo, PortIndex};

impl From<PatchError> for ApplyError {
    fn from(e: PatchError) -> Self {
        match e {
            PatchError::Invalid(error) => ApplyError::Invalid(vec![error]),
            PatchError::UnknownObject {
                collection,
                id,
                change,
            } => ApplyError::UnknownObject {
                collection: collection.name().to_owned(),
                id,
                change,
            },
        }
    }
}

impl Engine {
    /// Makes `changes` (in order, atomically) to the active state and applies the result.
    pub fn patch(
        &mut self,
        changes: Vec<Change>,
        options: ApplyOptions,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.check_generation(options)?;
        let edits = Edits::of(&changes);
        if edits.touched.len() > DIFF_BY_TOUCHED_MAX {
            let state = edit(&self.active.state, changes)?;
            return self.apply_edits(state, options, Some(edits));
        }
        let before = Before::take(&self.active.state, &edits.touched);
        let log = edit_in_place(&mut self.active.state, changes)?;
        self.apply_in_place(before, log, edits, options)
    }

    /// [`Engine::patch`] with the objects as a client sent them (JSON).
    pub fn patch_raw(
        &mut self,
        changes: Vec<RawChange>,
        options: ApplyOptions,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.check_generation(options)?;
        if changes.len() > DIFF_BY_TOUCHED_MAX {
            let (state, typed) = edit_raw(&self.active.state, changes)?;
            return self.apply_edits(state, options, Some(Edits::of(&typed)));
        }
        // The objects a batch touches are known before they are read: an object that
        // does not read is refused before the excerpt is used.
        let touched: Vec<(Collection, String)> = changes
            .iter()
            .filter_map(|c| match c {
                RawChange::Put { collection, object } => object
                    .get(collection.key_field())
                    .and_then(|k| k.as_str())
                    .map(|k| (*collection, k.to_owned())),
                RawChange::Delete { collection, id } => Some((*collection, id.clone())),
            })
            .collect();
        let before = Before::take(&self.active.state, &touched);
        let (log, typed) = edit_raw_in_place(&mut self.active.state, changes)?;
        let edits = Edits::of_placed(&typed, &log);
        self.apply_in_place(before, log, edits, options)
    }

    /// Applies the active state as `log` changed it in place from what `before` keeps
    /// of it; unless a new generation came of it, the change is taken back (also when a
    /// step panics), so that a refused change leaves the running configuration as it was.
    fn apply_in_place(
        &mut self,
        before: Before,
        log: Vec<Undo>,
        edits: Edits,
        options: ApplyOptions,
    ) -> Result<ApplyOutcome, ApplyError> {
        let started = Instant::now();
        let generation = self.active.generation;
        let mut index_undo = None;
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            self.apply_edited(before, edits, options, &mut index_undo)
        }));
        // A step that panicked left what it changed in place: taken back as a refusal is.
        self.take_back_identities(generation);
        if self.active.generation == generation {
            if let (Some(u), Some(index)) = (index_undo, self.active.index.as_mut()) {
                index.undo(u);
            }
            undo(&mut self.active.state, log);
        }
        match result {
            Ok(result) => {
                log_outcome(&result, started);
                result
            }
            Err(panicked) => panic::resume_unwind(panicked),
        }
    }

    /// Validates (ports alone by the index when the change is made of ports, else the
    /// whole state) and diffs the state changed in place, then applies it.
    fn apply_edited(
        &mut self,
        before: Before,
        edits: Edits,
        options: ApplyOptions,
        index_undo: &mut Option<IndexUndo>,
    ) -> Result<ApplyOutcome, ApplyError> {
        let mut phases = Phases::start();
        let ports: Option<Vec<&str>> = edits
            .touched
            .iter()
            .map(|(c, id)| (*c == Collection::Ports).then_some(id.as_str()))
            .collect();
        let incremental = ports.and_then(|ids| {
            let active = &mut self.active;
            let index = active
                .index
                .get_or_insert_with(|| PortIndex::new(&active.valid));
            revalidate_ports(index, &active.valid, &active.state, &ids)
        });
        let (valid, keep_index) = match incremental {
            Some((valid, undo)) => {
                *index_undo = Some(undo);
                debug_assert_eq!(
                    validate(&self.active.state).as_ref(),
                    Ok(&valid),
                    "the ports validated alone are not the state validated whole"
                );
                (valid, true)
            }
            None => (
                validate(&self.active.state).map_err(ApplyError::Invalid)?,
                false,
            ),
        };
        phases.mark("validate");
        let after = patch::excerpt(&self.active.state, &edits.touched);
        let diff = diff_of(&before.excerpt, &after, &edits.touched);
        if let Some(whole) = &before.whole {
            debug_assert_eq!(
                diff,
                crate::diff::diff(whole, &self.active.state),
                "the diff of the objects changed in place is not the whole diff"
            );
        }
        phases.mark("diff");
        let next = Next {
            state: None,
            valid,
            diff,
            keep_index,
        };
        self.apply_checked(next, options, Some(edits), phases)
    }

    /// A stale `expect_generation` is refused before the changes are looked at: they were
    /// meant for another state.
    fn check_generation(&self, options: ApplyOptions) -> Result<(), ApplyError> {
        match options.expect_generation {
            Some(expected) if expected != self.active.generation => {
                Err(ApplyError::GenerationMismatch {
                    expected,
                    current: self.active.generation,
                })
            }
            _ => Ok(()),
        }
    }
}

/// What a change made in place needs of the state before it: the objects it touches
/// (for the diff), and in the test builds the whole state (to check the diff).
struct Before {
    excerpt: DesiredState,
    whole: Option<DesiredState>,
}

impl Before {
    fn take(state: &DesiredState, touched: &[(Collection, String)]) -> Before {
        Before {
            excerpt: patch::excerpt(state, touched),
            whole: cfg!(debug_assertions).then(|| state.clone()),
        }
    }
}
