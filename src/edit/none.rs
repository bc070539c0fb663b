//! The unedited model (`--method none`): the baseline every table starts from.

use serde::{Deserialize, Serialize};

use super::editor::Editor;
use crate::data::EditRecord;
use crate::error::Result;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// The unedited model's (empty) settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoneConfig {
    #[serde(default)]
    pub description: String,
}

/// The unedited model (`--method none`).
pub struct NoEdit;

impl Editor for NoEdit {
    fn name(&self) -> &str {
        "none"
    }
    fn changes_weights(&self) -> bool {
        false
    }
    fn edit(&mut self, _: &mut Model, _: &Tokenizer, _: &[EditRecord]) -> Result<()> {
        Ok(())
    }
}
