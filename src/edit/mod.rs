//! Editing methods: what changes a model's weights so that it states new facts.
//!
//! Every method implements [`Editor`], is configured by a recipe (a TOML file with a
//! `method` field, read by [`config`] into the method's typed settings,
//! [`MethodConfig`]) and is built by the [`registry`], the one file that lists methods.
//! Dependencies point one way: the registry imports the methods; a method imports only
//! [`editor`], [`layers`], [`augment`] and the core it shares ([`locate`]).
//! - [`none`]: the unedited model (the baseline every table starts from).
//! - [`ft`]: fine-tuning, the paper's recipe and its ablations ([`ft::recipe::Recipe`]);
//!   naive fine-tuning, FT-L, FT-M and LocFT-BF are recipes of it.
//! - [`rome`], [`memit`]: the locate-then-edit baselines; [`alphaedit`]: MEMIT in the
//!   null space of the preserved keys, for lifelong editing. What they share (keys, key
//!   statistics, the value optimisation, MEMIT's spreading) is [`locate`].
//!
//! A new method is one file (or folder) here with its config type and its `Editor`, one
//! variant and one entry in [`registry`], and a recipe in `recipes/`.

pub mod alphaedit;
pub mod augment;
pub mod config;
pub mod editor;
pub mod ft;
pub mod grace;
pub mod layers;
pub mod locate;
pub mod memit;
pub mod mend;
pub mod none;
pub mod post;
pub mod registry;
pub mod rome;
pub mod serac;
pub mod wise;

pub use editor::{Editor, EditorState};
pub use none::NoEdit;
pub use registry::{BuildOptions, METHODS, MethodConfig, build};
