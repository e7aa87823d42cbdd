//! Changes to single objects (`<collection>.put`, `.delete`, `config.patch`): each batch is
//! made into the whole resulting state and applied as [`Engine::apply`] applies a state,
//! so both kinds of change share validation, diff, history and rollback. What differs is
//! cost: the diff looks at the objects a batch touches alone, and the store appends the
//! batch to its journal where a whole state is written whole.

use super::{ApplyError, ApplyOptions, ApplyOutcome, Engine};
use crate::patch::{edit, edit_raw, Change, Edits, PatchError, RawChange};

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
        let state = edit(&self.active.state, changes)?;
        self.apply_edits(state, options, Some(edits))
    }

    /// [`Engine::patch`] with the objects as a client sent them (JSON).
    pub fn patch_raw(
        &mut self,
        changes: Vec<RawChange>,
        options: ApplyOptions,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.check_generation(options)?;
        let (state, typed) = edit_raw(&self.active.state, changes)?;
        self.apply_edits(state, options, Some(Edits::of(&typed)))
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
