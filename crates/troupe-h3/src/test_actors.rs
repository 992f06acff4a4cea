//! Actors for unit tests: stand-ins where a test needs an actor reference and nothing else.

use std::marker::PhantomData;

use ractor::{Actor, ActorProcessingErr, ActorRef, Message};

/// An actor that takes any message of type `M` and does nothing with it (a parked stream
/// actor, a connection whose replies a test reads elsewhere).
pub(crate) struct Sink<M>(PhantomData<fn() -> M>);

impl<M> Sink<M> {
    pub(crate) fn new() -> Self {
        Sink(PhantomData)
    }
}

impl<M: Message> Actor for Sink<M> {
    type Msg = M;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<M>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// A fresh unlinked [`Sink`].
pub(crate) async fn sink<M: Message>() -> ActorRef<M> {
    Actor::spawn(None, Sink::<M>::new(), ())
        .await
        .expect("spawn a sink actor")
        .0
}
