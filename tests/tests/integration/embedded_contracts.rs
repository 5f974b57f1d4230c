//! The embedded adapters against their ports' contract suites.

mod edge_vector_store {
    use imgfleet_tests::embedded::EdgeFixture;
    imgfleet_tests::vector_store_contract!(EdgeFixture::new());
}

mod file_state_store {
    use imgfleet_tests::embedded::FileStateFixture;
    imgfleet_tests::state_store_contract!(FileStateFixture::new());
}

mod memory_queue {
    use imgfleet_tests::embedded::MemoryQueueFixture;
    imgfleet_tests::work_queue_contract!(MemoryQueueFixture);
}
